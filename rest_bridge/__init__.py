"""The FastAPI bridge: genserve's RPCs as HTTP endpoints. A gRPC client, nothing else."""
