"""Exit codes of the training process that mean something to its supervisor."""

EXIT_TEMPFAIL = 75  # the database stayed away: queue the job again (sysexits' EX_TEMPFAIL)
EXIT_OUT_OF_MEMORY = 76  # the trainer ran out of memory: retried once with the same settings, then failed
EXIT_RANK_FAILED = 70  # a rank other than 0 failed, and recorded why (sysexits' EX_SOFTWARE)
EXIT_PEER_LOST = 71  # a rank's collective failed because another rank died: that one's exit code is the attempt's
