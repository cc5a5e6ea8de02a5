"""Low-level pieces facts share with the operations above them (facts import nothing from operations)."""
