"""Provenance: a generation record written into every file genserve makes.

record.py builds the plain record (model, weights digest, engine, seed, parameters,
request id, time, version, "ai_generated"); engine.py stamps each media engine at load
(the weights digest is computed once there) and puts each request's record where the
encoders find it (`MediaRun.record`); one small module per format writes it into the
file's first bytes (png, xmp, mp4, wav, mesh). Plain Python only: no protobuf here.
"""
