"""genserve's gRPC server: settings, model registry, engines, servicers and interceptors."""
