"""CLI sub-commands, one module each. Rule: import only click and the standard library at module level;
import memlens's heavy modules (torch, pandas, ...) inside the command function."""
