from scanpixd.cli.daemon_cli import main

main()
