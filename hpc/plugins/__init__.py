"""Collective plug-ins: `registry` turns a SPEC into a checked function, `verify` checks it against
native MPI before anything is timed or trained with it."""
