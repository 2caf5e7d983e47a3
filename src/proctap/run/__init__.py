"""`proctap run`: start a command, follow its whole process tree, report it (session, tree, report, timeline)."""
