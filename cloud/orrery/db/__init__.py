"""The companion's database: tables, engines and migrations."""
