//! MultiRaft sans-IO core and Node driver (filled in by the coordinator issue).
