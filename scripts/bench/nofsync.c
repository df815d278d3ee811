/* nofsync.c — an LD_PRELOAD shim for one experiment of small.sh, never for
 * real use: fsync(2) and fdatasync(2) return success without doing anything.
 * Running chitd under it shows what its small-file pipeline costs once
 * durability is free (the renames, parsing, HTTP, hand-offs), next to what
 * the fsyncs cost. Built by small.sh with `cc -shared -fPIC`. */
int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
