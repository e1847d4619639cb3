# Debian ships protobuf without a CMake package config; LocalAI's grpc-server CMakeLists.txt asks for one
# (find_package(Protobuf CONFIG)): this one answers it with CMake's own FindProtobuf module.
find_package(Protobuf MODULE REQUIRED)
