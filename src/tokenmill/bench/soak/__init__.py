"""``tokenmill bench --soak``: a long mixed run against a server this command starts itself,
checking that memory, file descriptors, the engine and the usage ledger hold steady."""
