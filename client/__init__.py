"""Everything that touches a device's private data: local training, evaluation, the ClientApp."""
