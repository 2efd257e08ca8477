from genserve.server.worker.child import main

main()
