"""One module per modality: its params, bounds, price and spec."""
