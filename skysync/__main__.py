from skysync.cli import main

main()
