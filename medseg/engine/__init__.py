"""Training on MONAI's engines: setup functions, small ignite handlers, and the bundle runner."""
