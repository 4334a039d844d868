"""Analysis of records: `laws` (Amdahl, Gustafson and their fit), `choice` (model comparison),
`scaling` (fits per curve), `costmodel` (α–β for collectives), `groups` (record loading and grouping),
`compare` (verdicts against a noise band), `plot` and `report`."""
