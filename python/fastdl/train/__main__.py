from fastdl.train import main

main()
