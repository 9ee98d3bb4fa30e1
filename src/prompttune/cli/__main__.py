from prompttune.cli.app import main

main()
