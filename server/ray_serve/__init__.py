"""Ray Serve placement: a model's engine in a Ray Serve deployment, behind the same edge."""
