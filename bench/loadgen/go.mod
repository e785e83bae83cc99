module github.com/zt-policy/zt-policy/bench/loadgen

go 1.25
