"""Long media as jobs: submitted once, run whether or not anyone is connected, stored as
they are produced, watched or downloaded from any byte offset, kept across restarts."""
