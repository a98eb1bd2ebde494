"""NAT traversal: hole punching and relaying (``traversal``), and UPnP IGD port mapping (``igd``)."""
