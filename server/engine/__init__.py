"""Engines: one contract for every modality (contract.py), the one thread-to-loop
channel (channel.py), and the serial engine most media models run on (serial.py)."""
