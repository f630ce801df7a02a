"""Entry point of the PyInstaller build: the same ``outpost`` command as the wheel's."""
import multiprocessing

from agent.cli import main

if __name__ == "__main__":
    # the delivery process is started with "spawn": a frozen executable must recognise
    # that it was started as that child, not as a new `outpost` command
    multiprocessing.freeze_support()
    main()
