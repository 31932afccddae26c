from pruning_client.cli import main

main()
