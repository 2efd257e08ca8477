"""Media generation: plain params and events, the chunked output, one module per modality."""
