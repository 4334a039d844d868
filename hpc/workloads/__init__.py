"""What runs on every rank: `bench` (collective timing), `train` (data-parallel training with a sync
scheme from `sync/`), `models` (built-in architectures and user model specs)."""
