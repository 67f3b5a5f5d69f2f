from netslate.cli.main import main

main()
