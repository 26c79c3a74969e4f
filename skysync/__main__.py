from skysync.entrypoints.cli import main

main()
