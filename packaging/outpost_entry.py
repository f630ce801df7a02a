"""Entry point of the PyInstaller build: the same ``outpost`` command as the wheel's."""
from agent.cli import main

if __name__ == "__main__":
    main()
