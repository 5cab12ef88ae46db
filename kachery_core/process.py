"""Settings of the running process that long-lived kachery processes need."""

import resource


def raise_open_file_limit():
    """Raise the soft limit of open files to the hard limit; return the new soft limit.

    A mount or a server holds a descriptor per open file or connection, and
    the usual soft limit (1,024) made 1,981 of 3,000 concurrent opens through
    a mount fail with EMFILE; the hard limit is what the administrator allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An "unlimited" hard limit is still capped by the kernel (fs.nr_open).
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft
