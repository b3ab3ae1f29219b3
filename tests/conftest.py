import os

# Tests must pass the same on any machine: keep Ray quiet and local.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
