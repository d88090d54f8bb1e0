from opstylegan.cli.main import main

main()
