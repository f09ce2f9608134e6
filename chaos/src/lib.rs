//! Fault injection and checkers for skiff. Built by the chaos issue.
