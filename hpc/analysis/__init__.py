"""Analysis of records: `laws` (Amdahl, Gustafson and their fit), `models` (the time-model family),
`predict` (model choice by backtest and AICc, prediction intervals), `curves` (records or a CSV as
curves), `scaling` (fits per curve), `forecasts` (`hpc predict` and its backtest), `costmodel` (α–β
for collectives), `groups` (record loading and grouping), `compare` (verdicts against a noise band),
`plot` and `report`."""
