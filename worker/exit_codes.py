"""Exit codes of the training process that mean something to its supervisor."""

EXIT_TEMPFAIL = 75  # the database stayed away: queue the job again (sysexits' EX_TEMPFAIL)
EXIT_OUT_OF_MEMORY = 76  # the trainer ran out of memory: retried once with the same settings, then failed
