module edm-gateway/bench/openloop

go 1.19
