"""HDF5 datasets: `make` writes synthetic or imported files, `loader` reads each rank's shard."""
