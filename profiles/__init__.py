"""Target profiles as TOML data, one file per device; loaded by :mod:`effdeploy.profile`."""
