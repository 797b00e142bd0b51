"""One module per on-disk dataset layout; :mod:`medseg.data.discovery` picks among them."""
