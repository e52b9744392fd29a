"""Label editing: edit sessions and the policy for uncommitted edits (no Qt)."""
