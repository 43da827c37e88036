// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// A minimal contract for end-to-end tests: deployed and called through the proxy.
contract Counter {
    uint256 public count;
    address public lastCaller;

    event Incremented(address indexed by, uint256 count);

    function increment(uint256 by) external {
        require(by > 0, "Counter: increment by zero");
        count += by;
        lastCaller = msg.sender;
        emit Incremented(msg.sender, count);
    }
}
