from claude_bottle.cli.main import main

main()
