from statusmail.cli import main

main()
