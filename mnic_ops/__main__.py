"""Allow ``python -m mnic_ops``."""

from mnic_ops.cli import main

if __name__ == "__main__":
    main()
