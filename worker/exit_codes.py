"""Exit codes of the training process that mean something to its supervisor."""

EXIT_TEMPFAIL = 75  # the database stayed away: queue the job again (sysexits' EX_TEMPFAIL)
