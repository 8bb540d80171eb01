"""The service's configuration (repxd.toml) and run submission shared by its roles."""
