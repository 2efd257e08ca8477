"""gRPC servicers: protobuf in and out at this edge, plain Python types behind it."""
