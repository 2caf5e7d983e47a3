"""``proctap top``: who is spawning what, right now.

* :mod:`.aggregate`: the aggregator, fed the watcher's events (pure: no terminal, no kernel);
* :mod:`.table`: the text of the header and of each view's table, fitted to a width;
* :mod:`.screen`: keys, the frame's layout and curses.

cgroup ids become paths through :class:`proctap.linux.cgroups.CgroupPaths`, shared with the context of every process.

The command line is :mod:`proctap.cli.top`; docs/top.md describes the views, keys, columns and the JSON form.
"""
